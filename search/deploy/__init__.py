"""Deploy a search's champion: `python -m search.deploy SOURCE`.

One job a module, in the order the command runs them:
  champion.py  SOURCE (runs/NAME or models:/NAME@alias) -> the champion, rebuilt from MLflow
  export.py    the champion -> ONNX (dynamic batch), checked against eager PyTorch
  int8.py      ONNX fp32 -> ONNX Runtime static int8, calibrated on training images
  latency.py   eager, torch.compile, ONNX Runtime fp32 and int8, timed interleaved
  registry.py  the ONNX model(s) registered in MLflow as NAME-onnx(-int8)@champion
  serve.py     a registered ONNX model served by Ray Serve with MLflow's HTTP interface
               (`python -m search.serve`; `mlflow models serve` serves it too)

What comes after a search: runs in its own command, reads the champion from MLflow. May
import `search.record` (MLflow names and URIs) and `search.trial` (to rebuild a model);
neither of those imports anything from here.
"""
