"""Convert a BERT encoder exported to ONNX back into a transformers ``BertModel`` (safetensors).

Exporters name most initializers after the PyTorch parameters but auto-name the MatMul
weights (``onnx::MatMul_470``). Each such weight feeds a MatMul whose output goes into an Add
with a named bias (``...query.bias``): that bias names the weight, which is stored transposed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from transformers import BertConfig, BertModel

logger = logging.getLogger(__name__)


def onnx_bert_state_dict(model: onnx.ModelProto, prefix: str = "") -> dict[str, np.ndarray]:
    """Map an ONNX BERT graph's initializers to ``BertModel`` parameter names.

    Args:
        model: The loaded ONNX model.
        prefix: Prefix of the named initializers, e.g. ``"model.0.auto_model."``; detected when empty.

    Returns:
        Parameter name -> array, ready for ``BertModel.load_state_dict``.
    """
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    if not prefix:
        anchor = next(name for name in weights if name.endswith("embeddings.word_embeddings.weight"))
        prefix = anchor[: -len("embeddings.word_embeddings.weight")]
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {name[len(prefix) :]: value for name, value in weights.items() if name.startswith(prefix)}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights or node.input[1].startswith(prefix):
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [name for add in adds for name in add.input if name.startswith(prefix) and name.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"MatMul {node.name!r}: expected one named bias after it, found {biases}")
        state[biases[0][len(prefix) : -len(".bias")] + ".weight"] = weights[node.input[1]].T.copy()
    return state


def bert_config_from_state(
    state: dict[str, np.ndarray],
    num_attention_heads: int,
    layer_norm_eps: float = 1e-12,
) -> BertConfig:
    """Infer a ``BertConfig`` from parameter shapes; the head count is not visible in them."""
    vocab_size, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = len({name.split(".")[2] for name in state if name.startswith("encoder.layer.")})
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
        layer_norm_eps=layer_norm_eps,
    )


def convert_onnx_bert(onnx_path: str | Path, output_dir: str | Path, num_attention_heads: int) -> Path:
    """Write ``config.json`` + ``model.safetensors`` of a ``BertModel`` rebuilt from an ONNX file.

    Args:
        onnx_path: The ONNX export of a BERT encoder.
        output_dir: Folder to write (created).
        num_attention_heads: Number of attention heads (not recoverable from parameter shapes).

    Returns:
        ``output_dir``.

    Raises:
        ValueError: If a parameter is missing or unexpected after the mapping.
    """
    model = onnx.load(str(onnx_path))
    state = onnx_bert_state_dict(model)
    epsilons = [
        attr.f
        for node in model.graph.node
        if node.op_type == "LayerNormalization"
        for attr in node.attribute
        if attr.name == "epsilon"
    ]
    config = bert_config_from_state(state, num_attention_heads, layer_norm_eps=epsilons[0] if epsilons else 1e-12)
    bert = BertModel(config, add_pooling_layer=False)
    tensors = {name: torch.from_numpy(np.array(value, copy=True)) for name, value in state.items()}
    missing, unexpected = bert.load_state_dict(tensors, strict=False)
    missing = [name for name in missing if not name.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{onnx_path}: missing parameters {missing}, unexpected {unexpected}")
    bert.save_pretrained(str(output_dir), safe_serialization=True)
    return Path(output_dir)


def convert_and_check(
    onnx_path: str | Path,
    output_dir: str | Path,
    input_ids: torch.Tensor,
    tolerance: float = 1e-4,
) -> float:
    """Convert, choosing the attention head count that reproduces onnxruntime within ``tolerance``.

    Head sizes of 64 and 32 are tried (BERT, MiniLM); the first whose token embeddings match
    onnxruntime is kept.

    Returns:
        The measured max |difference| of the kept conversion.

    Raises:
        ValueError: If no head count reproduces onnxruntime within ``tolerance``.
    """
    hidden = onnx_bert_state_dict(onnx.load(str(onnx_path)))["embeddings.word_embeddings.weight"].shape[1]
    diffs = {}
    for head_size in (64, 32, 128, 16):
        if hidden % head_size:
            continue
        convert_onnx_bert(onnx_path, output_dir, hidden // head_size)
        diffs[hidden // head_size] = max_abs_diff_vs_onnxruntime(onnx_path, output_dir, input_ids)
        if diffs[hidden // head_size] <= tolerance:
            logger.info(
                "Converted %s: %d heads, max |diff| vs onnxruntime %.2e",
                onnx_path,
                hidden // head_size,
                diffs[hidden // head_size],
            )
            return diffs[hidden // head_size]
    raise ValueError(f"{onnx_path}: no head count reproduces onnxruntime within {tolerance}: {diffs}")


def max_abs_diff_vs_onnxruntime(onnx_path: str | Path, model_dir: str | Path, input_ids: torch.Tensor) -> float:
    """Largest |difference| between onnxruntime's token embeddings and the converted model's.

    Args:
        onnx_path: The ONNX export (its 3-d float output is taken as the token embeddings).
        model_dir: The converted ``BertModel`` folder.
        input_ids: A ``[batch, seq]`` batch without padding.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    mask = torch.ones_like(input_ids)
    feeds = {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()}
    feeds = {inp.name: feeds[inp.name] for inp in session.get_inputs()}
    outputs = session.run(None, feeds)
    reference = next(out for out in outputs if out.ndim == 3)
    bert = BertModel.from_pretrained(str(model_dir)).eval()
    with torch.inference_mode():
        ours = bert(input_ids=input_ids, attention_mask=mask).last_hidden_state.numpy()
    return float(np.abs(ours - reference).max())
