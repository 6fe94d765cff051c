# Two commands on a fresh clone with only python3 and make: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo example regression charlm test lint install clean

# Re-install only when the project's declared dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	# MLflow's empty SQLite schema, built once so a first search's new mlflow.db is a copy
	$(BIN)/python -m search.record.sqlite_schema >/dev/null 2>&1 || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m search.run conf/digits.yaml

# Search your own model: a network in conf/own_model/, on PNG files written from the digits.
example: $(STAMP)
	$(BIN)/python conf/own_model/make_image_folder.py data/digits-png
	$(BIN)/python -m search.run conf/own_model/search.yaml

# Search your own training task: regression on scikit-learn's bundled diabetes data
# (conf/regression/), a character-level language model on text in the repository (conf/charlm/).
regression: $(STAMP)
	$(BIN)/python -m search.run conf/regression/search.yaml

charlm: $(STAMP)
	$(BIN)/python -m search.run conf/charlm/search.yaml

# pytest exits 5 when it collects no tests; that is not a failure of the code.
# Two xdist workers, each test module in one (tests/conftest.py: pytest_xdist_make_scheduler).
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadscope || test $$? -eq 5

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs out mlruns mlartifacts mlflow.db .pytest_cache
