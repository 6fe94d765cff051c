"""A small character-level language model: the task (`charlm.task:CharLM`) and its network
(`charlm.task:causal_cnn`), with the text it learns from (corpus.txt: a snapshot of this
project's README, about 55 KB). A package, so that Ray ships the text with the code."""
