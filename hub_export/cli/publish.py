"""Commands that make and publish a model folder: build, verify, push, export-backends."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from hub_export.cli.options import limit_int, per_part, positive_float, positive_int, require, split_assignment

if TYPE_CHECKING:
    from hub_export.publish.build import PartOptions

logger = logging.getLogger("hub_export")


def parts_from_args(args: argparse.Namespace) -> list[PartOptions]:
    """Turn the ``build`` options into :class:`PartOptions`, validating every name and value."""
    from hub_export.publish.build import PartOptions

    sources = [split_assignment(value, "--part") for value in args.part]
    names = [name for name, _ in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"--part names must be unique, got {names}")
    pooling = per_part(args.pooling, "--pooling", names, str)
    max_len = per_part(args.max_seq_length, "--max-seq-length", names, positive_int)
    weights = per_part(args.weight, "--weight", names, positive_float)
    truncate = per_part(args.truncate_dim, "--truncate-dim", names, positive_int)
    part_prompts: dict[str, dict[str, str]] = {}
    for value in args.part_prompt or []:
        key, text = split_assignment(value, "--part-prompt")
        name, _, prompt_name = key.partition(".")
        if name not in names or not prompt_name:
            raise ValueError(f"--part-prompt {value!r}: expected PART.PROMPT_NAME=TEXT with PART in {names}")
        part_prompts.setdefault(name, {})[prompt_name] = text
    trusted = per_part(
        [f"{name}=" for name in args.part_trust_remote_code or []], "--part-trust-remote-code", names, str
    )
    return [
        PartOptions(
            name=name,
            source=source,
            pooling=pooling.get(name),
            max_seq_length=max_len.get(name),
            weight=weights.get(name, 1.0),
            truncate_dim=truncate.get(name),
            prompts=part_prompts.get(name, {}),
            trust_remote_code=name in trusted,
        )
        for name, source in sources
    ]


def cmd_build(args: argparse.Namespace) -> int:
    """Build a combined model folder."""
    from hub_export.publish.build import build_model

    prompts = dict(split_assignment(value, "--prompt") for value in args.prompt or [])
    out = build_model(
        parts_from_args(args),
        args.out,
        prompts=prompts,
        normalize_output=args.normalize_output,
        token=args.token,
        cache_dir=args.cache_dir,
        allow_pickle=args.allow_pickle,
    )
    logger.info("Built %s", out)
    sys.stdout.write(f"{out}\n")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a model folder in a fresh process; exit 1 when a difference exceeds the tolerance."""
    from hub_export.publish.verify import format_report, run_verification

    record = run_verification(args.model_dir, args.tolerance)
    sys.stdout.write(format_report(record) + "\n")
    return 0 if record["passed"] else 1


def cmd_push(args: argparse.Namespace) -> int:
    """Push a verified model folder to the Hub in one commit (or list what would be pushed)."""
    from hub_export.publish.push import dry_run_listing, push_model
    from hub_export.publish.sources import check_repo_id

    if args.dry_run:
        check_repo_id(args.repo_id)
        sys.stdout.write(dry_run_listing(args.model_dir, args.allow_pickle, args.skip_verify) + "\n")
        return 0
    url = push_model(
        args.model_dir,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        token=args.token,
        skip_verify=args.skip_verify,
        allow_pickle=args.allow_pickle,
    )
    sys.stdout.write(f"{url}\n")
    return 0


def cmd_export_backends(args: argparse.Namespace) -> int:
    """Export every part to ONNX / OpenVINO (fp32, optionally int8), check them against torch, add them."""
    onnx = args.onnx or not args.openvino
    require(
        "onnx", "onnxscript", *(["onnxruntime"] if onnx else []), *(["openvino"] if args.openvino else []),
        *(["nncf"] if args.openvino and args.int8 else []), *(["scipy"] if args.sts else []),
    )  # fmt: skip
    from hub_export.publish.backends import export_backends

    record = export_backends(
        args.model_dir, onnx=onnx, openvino=args.openvino, int8=args.int8, family=args.int8_for,
        calibration=args.calibration, sts=args.sts, sts_limit=args.sts_limit,
    )  # fmt: skip
    for name, entry in record["files"].items():
        change = f"  STS {entry['sts_change']:+.2f}" if "sts_change" in entry else ""
        sys.stdout.write(f"{name:<46} max |diff| vs torch {entry['max_abs_diff']:.2e}{change}\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """build, verify, push and export-backends."""
    build = sub.add_parser("build", help="build a combined model folder from parts")
    build.add_argument(
        "--part",
        action="append",
        required=True,
        metavar="NAME=SRC",
        help="part name and source (a local folder or org/name[@revision]), in order",
    )
    build.add_argument("--pooling", action="append", metavar="NAME=MODE", help="pooling of a plain transformers part")
    build.add_argument("--prompt", action="append", metavar="NAME=TEXT", help="model-wide prompt, e.g. query=...")
    build.add_argument(
        "--part-prompt",
        action="append",
        metavar="PART.NAME=TEXT",
        help="a part's own text for a model-wide prompt name (query, document or a --prompt name)",
    )
    build.add_argument(
        "--max-seq-length",
        action="append",
        metavar="NAME=N",
        help="token limit of a part (at most its position limit); longer texts are truncated",
    )
    build.add_argument(
        "--weight", action="append", metavar="NAME=W", help="finite factor > 0 on a part's unit vector (default 1)"
    )
    build.add_argument(
        "--truncate-dim",
        action="append",
        metavar="NAME=K",
        help="keep the first K dims of a part, then re-normalize (Matryoshka)",
    )
    build.add_argument(
        "--part-trust-remote-code",
        action="append",
        metavar="NAME",
        help="let this part's own code (auto_map) run; recorded in concat_config.json and the card",
    )
    build.add_argument("--normalize-output", action="store_true", help="L2-normalize the concatenation")
    build.add_argument(
        "--out",
        required=True,
        help="output folder: new, empty, or a previous build (replaced only by a complete new model)",
    )
    build.add_argument("--token", default=None, help="Hub token for private parts (default: HF_TOKEN / login)")
    build.add_argument("--cache-dir", default=None, help="Hub cache folder for downloaded parts")
    build.add_argument("--allow-pickle", action="store_true", help="accept parts with pickle weights")
    build.set_defaults(func=cmd_build)

    verify = sub.add_parser("verify", help="check a model folder against its parts, in a fresh process")
    verify.add_argument("model_dir", help="combined model folder")
    verify.add_argument(
        "--tolerance", type=positive_float, default=None, help="max |difference| allowed (default 1e-5)"
    )
    verify.set_defaults(func=cmd_verify)

    push = sub.add_parser("push", help="publish a verified model folder to the Hub in one commit")
    push.add_argument("model_dir", help="combined model folder (verified; only its model files are sent)")
    push.add_argument("--repo-id", required=True, help="org/name")
    push.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    push.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    push.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN / login)")
    push.add_argument("--dry-run", action="store_true", help="list the files and sizes; no network")
    push.add_argument("--skip-verify", action="store_true", help="push without a passing verification")
    push.add_argument("--allow-pickle", action="store_true", help="also upload pickle weights")
    push.set_defaults(func=cmd_push)

    export = sub.add_parser(
        "export-backends", help="add ONNX / OpenVINO files (fp32, int8) to every part, checked against torch"
    )
    export.add_argument("model_dir", help="combined model folder (written by build or compress)")
    export.add_argument("--onnx", action="store_true", help="onnx/model.onnx per part (the default)")
    export.add_argument("--openvino", action="store_true", help="openvino/openvino_model.xml + .bin per part")
    export.add_argument(
        "--int8",
        action="store_true",
        help="also int8: ONNX Runtime dynamic (onnx/model_q*_<cpu>.onnx), NNCF static (openvino/..._qint8_quantized)",
    )
    export.add_argument(
        "--int8-for",
        default=None,
        help="CPU of the int8 ONNX file: avx2, avx512, avx512_vnni, arm64 (default: this one)",
    )
    export.add_argument("--calibration", default=None, help="texts for OpenVINO int8 (default: built-in samples)")
    export.add_argument("--sts", default=None, help="STS-B style .tsv[.gz]: report each file's Spearman change")
    export.add_argument("--sts-limit", type=limit_int, default=None, help="STS pairs to use (0 or unset = all)")
    export.set_defaults(func=cmd_export_backends)
