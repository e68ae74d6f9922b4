"""``python -m grlhf.convert``: HF safetensors <-> orbax, and a readable summary of a checkpoint.

    python -m grlhf.convert to-orbax HF_DIR OUT_DIR [--dtype bfloat16]
    python -m grlhf.convert to-hf ORBAX_DIR OUT_DIR [--dtype bfloat16] [--max-shard-size 5GB]
    python -m grlhf.convert --info DIR            (either kind of directory)

Add ``--debug`` (or set ``GRLHF_DEBUG=1``) for the traceback of an error in the input.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from grlhf.errors import cli_main
from grlhf.models.qwen_vl import checkpoint
from grlhf.models.qwen_vl.hf_params import path_to_str

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _size(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)B?", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"cannot read the size {text!r}; write e.g. 5GB, 500MB or 1000000")
    return int(float(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)])


def load_any(path: Path, param_dtype=None):
    """An HF directory (safetensors) or an orbax directory written by ``to-orbax``."""
    if (path / checkpoint.ORBAX_PARAMS).exists():
        return checkpoint.load_orbax(path, param_dtype=param_dtype)
    return checkpoint.from_pretrained(path, param_dtype=param_dtype)


def summary(model) -> str:
    """Parameter counts per part, dtypes, and the shapes of one layer of each stack."""
    config = model.config
    rows: "OrderedDict[str, tuple]" = OrderedDict()
    counts = {"vision": 0, "language model": 0, "lm_head": 0}
    dtypes = set()
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = path_to_str(path)
        value = variable.get_value()
        dtypes.add(str(value.dtype))
        part = "vision" if name.startswith("model.visual") else "lm_head" if name.startswith("lm_head") else "language model"
        counts[part] += int(np.prod(value.shape))
        pattern = re.sub(r"\.(blocks|layers)\.\d+\.", r".\1.N.", name)
        if pattern not in rows:
            rows[pattern] = (tuple(value.shape), str(value.dtype))
    total = sum(counts.values())
    lines = [f"{config.architecture} ({config.family})",
             f"parameters: {total:,} ({total / 1e9:.3f} B); dtypes: {', '.join(sorted(dtypes))}"]
    lines += [f"  {part}: {count:,}" for part, count in counts.items()]
    t, v = config.text, config.vision
    lines.append(f"text: hidden {t.hidden_size}, layers {t.num_hidden_layers}, heads {t.num_attention_heads}/"
                 f"{t.num_key_value_heads} kv, vocab {t.vocab_size}, tied embeddings {config.tie_word_embeddings}")
    lines.append(f"vision: width {v.width}, depth {v.depth}, heads {v.num_heads}, out {v.out_size}")
    lines.append("shapes (N = every block/layer):")
    lines += [f"  {name:70s} {str(shape):>16s} {dtype}" for name, (shape, dtype) in rows.items()]
    return "\n".join(lines)


def convert(argv: Sequence[str]) -> int:
    """The command line's work; ``main`` adds the error handling."""
    parser = argparse.ArgumentParser(prog="python -m grlhf.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--info", type=Path, metavar="DIR", help="print a summary of a checkpoint and exit")
    parser.add_argument("direction", nargs="?", choices=["to-orbax", "to-hf"])
    parser.add_argument("source", nargs="?", type=Path)
    parser.add_argument("target", nargs="?", type=Path)
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: as stored)")
    parser.add_argument("--max-shard-size", type=_size, help="to-hf: split the safetensors (e.g. 5GB)")
    args = parser.parse_args(argv)
    if args.info is not None:
        print(summary(load_any(args.info)))
        return 0
    if args.direction is None or args.source is None or args.target is None:
        parser.error("give --info DIR, or a direction (to-orbax / to-hf) with SOURCE and TARGET directories")
    dtype = DTYPES[args.dtype] if args.dtype else None
    if args.direction == "to-orbax":
        model = checkpoint.from_pretrained(args.source, param_dtype=dtype)
        written = checkpoint.save_orbax(model, args.target)
    else:
        model = checkpoint.load_orbax(args.source, param_dtype=dtype)
        written = checkpoint.save_pretrained(model, args.target, max_shard_size=args.max_shard_size)
    print(f"wrote {written}")
    print(summary(model))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """A user error (a missing directory, weights that do not fit their config) is one line on stderr and
    exit 2; ``--debug`` or ``GRLHF_DEBUG=1`` shows its traceback."""
    return cli_main("grlhf.convert", convert, argv)


if __name__ == "__main__":
    sys.exit(main())
