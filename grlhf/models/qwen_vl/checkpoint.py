"""HF safetensors in and out: ``from_pretrained`` (single file or sharded index, float32 or bfloat16,
tied embeddings, straight into target shardings) and ``save_pretrained`` (a directory transformers and
vLLM load with no missing or unexpected keys).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import torch
from flax import nnx
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.torch import save_file

from grlhf.errors import UserError
from grlhf.models.qwen_vl import hf_params
from grlhf.models.qwen_vl.config import QwenVLConfig
from grlhf.models.qwen_vl.model import QwenVLForConditionalGeneration
from grlhf.models.qwen_vl.sharding import state_shardings

PathLike = Union[str, os.PathLike]
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def _torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _numpy_to_torch(array: np.ndarray) -> torch.Tensor:
    array = np.array(array, order="C", copy=True)  # writable: torch refuses read-only buffers
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def checkpoint_files(path: PathLike) -> dict[str, Path]:
    """HF key -> the safetensors file holding it (follows ``model.safetensors.index.json``)."""
    path = Path(path)
    if (path / INDEX_FILE).exists():
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        return {key: path / name for key, name in weight_map.items()}
    if (path / SINGLE_FILE).exists():
        with safe_open(path / SINGLE_FILE, framework="pt") as handle:
            return {key: path / SINGLE_FILE for key in handle.keys()}
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")


class WeightsMismatch(UserError, ValueError):
    """A checkpoint's tensors do not fit the model its ``config.json`` describes (missing, unused, or of
    another shape; shapes are stated in the checkpoint's HF layout)."""


class _TensorReader:
    """Reads tensors by HF key (either naming layout), keeping each file open once."""

    def __init__(self, path: PathLike):
        self.files = {hf_params.canonical_hf_key(key): (key, file) for key, file in checkpoint_files(path).items()}
        self.handles: dict[Path, Any] = {}

    def keys(self) -> set[str]:
        return set(self.files)

    def _handle(self, file: Path):
        if file not in self.handles:
            self.handles[file] = safe_open(file, framework="pt")
        return self.handles[file]

    def stored_dtype(self) -> np.dtype:
        """The dtype of the first tensor (checkpoints keep one dtype)."""
        original, file = next(iter(self.files.values()))
        return _torch_to_numpy(self._handle(file).get_slice(original)[:1]).dtype

    def shape(self, key: str) -> tuple[int, ...]:
        """The stored tensor's shape, without reading it."""
        original, file = self.files[key]
        return tuple(self._handle(file).get_slice(original).get_shape())

    def read(self, key: str) -> np.ndarray:
        original, file = self.files[key]
        return _torch_to_numpy(self._handle(file).get_tensor(original))


def from_pretrained(
    path: PathLike,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Optional[Any] = None,
    mesh: Optional[Mesh] = None,
    **model_kwargs: Any,
) -> QwenVLForConditionalGeneration:
    """Load an HF model directory. With ``mesh``, each parameter goes straight into its shard.

    ``dtype`` is the compute dtype; ``param_dtype`` the storage dtype (default: as in the checkpoint).
    A checkpoint that lacks parameters is an error listing them; keys the model does not use are an
    error too (the wrong family or a modified architecture), except ``lm_head.weight`` of a tied model.
    """
    config = QwenVLConfig.from_pretrained(path)
    reader = _TensorReader(path)
    param_dtype = param_dtype or reader.stored_dtype()
    build = lambda: QwenVLForConditionalGeneration(  # noqa: E731
        config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype, **model_kwargs)
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    shardings = state_shardings(abstract, mesh) if mesh is not None else None

    flat = dict(nnx.to_flat_state(abstract))
    wanted = {path: hf_params.hf_key(hf_params.path_to_str(path)) for path in flat}
    missing = sorted(key for key, _ in wanted.values() if key not in reader.keys())
    unexpected = sorted(reader.keys() - {key for key, _ in wanted.values()} - {"lm_head.weight"})
    if missing:
        raise WeightsMismatch(f"checkpoint {path} is missing {len(missing)} tensor(s): {', '.join(missing)}")
    if unexpected:
        raise WeightsMismatch(f"checkpoint {path} has {len(unexpected)} tensor(s) the {config.family} model does "
                              f"not use: {', '.join(unexpected)}")
    flat_shardings = dict(nnx.to_flat_state(shardings)) if shardings is not None else {}
    for param_path, variable in flat.items():
        key, transform = wanted[param_path]
        expected = hf_params.hf_shape(variable.shape, transform, config)
        if reader.shape(key) != expected:
            raise WeightsMismatch(f"checkpoint {path}: {key} has shape {reader.shape(key)}, but its config.json "
                                  f"makes it {expected}")
        tensor = hf_params.to_nnx(reader.read(key), transform)
        tensor = np.ascontiguousarray(tensor.astype(param_dtype))
        sharding = flat_shardings.get(param_path)
        if sharding is None:
            array = jnp.asarray(tensor)
        else:
            sharding = sharding.get_value() if hasattr(sharding, "get_value") else sharding
            array = jax.make_array_from_callback(tensor.shape, sharding, lambda index, t=tensor: t[index])
        variable.set_value(array)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def hf_tensors(model: QwenVLForConditionalGeneration, dtype: Any = None) -> Iterator[tuple[str, np.ndarray]]:
    """``(hf_key, host array)`` for every parameter in HF layout, cast to ``dtype`` if given."""
    state = nnx.state(model, nnx.Param)
    flat = ((hf_params.path_to_str(path), np.asarray(jax.device_get(var.get_value())))
            for path, var in nnx.to_flat_state(state))
    for key, array in hf_params.iter_nnx_to_hf(flat, model.config):
        yield key, array if dtype is None else array.astype(dtype)


def save_pretrained(
    model: QwenVLForConditionalGeneration,
    path: PathLike,
    *,
    dtype: Any = None,
    max_shard_size: Optional[int] = None,
) -> Path:
    """Write ``config.json``, ``generation_config.json`` and safetensors in the hub layout.

    ``dtype`` casts the weights (default: as stored); ``max_shard_size`` (bytes) splits them into
    ``model-0000k-of-0000n.safetensors`` with an index.
    """
    from transformers import GenerationConfig

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {key: _numpy_to_torch(array) for key, array in hf_tensors(model, dtype)}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if max_shard_size is not None and shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], path / SINGLE_FILE, metadata={"format": "pt"})
    else:
        weight_map = {}
        for number, shard in enumerate(shards, 1):
            name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, path / name, metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (path / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                  indent=2))
    if model.config.hf is None:
        raise ValueError("the model's config did not come from transformers; cannot write config.json")
    hf_config = copy.deepcopy(model.config.hf)
    stored = next(iter(tensors.values())).dtype
    hf_config.dtype = str(stored).replace("torch.", "")
    hf_config.architectures = [model.config.architecture]
    hf_config.save_pretrained(path)
    GenerationConfig.from_model_config(hf_config).save_pretrained(path)
    return path


ORBAX_PARAMS = "params"


def save_orbax(model: QwenVLForConditionalGeneration, path: PathLike) -> Path:
    """Model parameters as an orbax checkpoint, with the HF ``config.json`` beside them."""
    import orbax.checkpoint as ocp

    if model.config.hf is None:
        raise ValueError("the model's config did not come from transformers; cannot write config.json")
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    model.config.hf.to_json_file(path / "config.json")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / ORBAX_PARAMS, nnx.state(model, nnx.Param), force=True)
    return path


def load_orbax(path: PathLike, *, dtype: Any = jnp.float32, param_dtype: Optional[Any] = None,
               mesh: Optional[Mesh] = None, **model_kwargs: Any) -> QwenVLForConditionalGeneration:
    """Restore ``save_orbax``'s output (into ``mesh``'s shardings when given). ``param_dtype`` defaults
    to the stored dtype."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    config = QwenVLConfig.from_pretrained(path)
    with ocp.StandardCheckpointer() as checkpointer:
        stored = checkpointer.metadata(path / ORBAX_PARAMS)
        stored_tree = getattr(stored, "item_metadata", stored)
        stored_dtype = jax.tree.leaves(stored_tree)[0].dtype
        build = lambda: QwenVLForConditionalGeneration(  # noqa: E731
            config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype or stored_dtype, **model_kwargs)
        graphdef, abstract = nnx.split(nnx.eval_shape(build))
        if mesh is not None:
            shardings = state_shardings(abstract, mesh)
            abstract = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                                    abstract, shardings)
        state = checkpointer.restore(path / ORBAX_PARAMS, abstract)
    return nnx.merge(graphdef, state)
