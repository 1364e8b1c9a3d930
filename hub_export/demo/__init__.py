"""The demo: all-MiniLM-L6-v2 + paraphrase-MiniLM-L3-v2 (both shipped on PyPI) built into one model and searched.

``l6_folder()`` is the all-MiniLM-L6-v2 folder inside its package, for recipes that build other pairs with it.
"""

from hub_export.demo.parts import PROBE_IDS, demo_parts, l3_onnx, l6_folder
from hub_export.demo.run import demo_model_dir, run_demo

__all__ = ["PROBE_IDS", "demo_model_dir", "demo_parts", "l3_onnx", "l6_folder", "run_demo"]
