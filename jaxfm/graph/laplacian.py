"""Laplacian eigenvector positional encodings (GraphFM section 3.2.1), with a per-graph cache.

PE of node i = its entries in the first k non-trivial eigenvectors of the symmetric normalised
Laplacian ``L = I - D^-1/2 A D^-1/2`` (smallest eigenvalues first). Conventions:

- The graph is treated as undirected and unweighted: ``A`` is the symmetrised 0/1 adjacency,
  self-loops dropped.
- ``L`` is block diagonal over connected components, so the eigenpairs are computed **per
  component** and merged by eigenvalue. Each component of n_c >= 2 nodes has exactly one trivial
  eigenvector (eigenvalue 0, ``∝ D^1/2 1`` on the component); it is dropped, the component's next
  ``min(k, n_c - 1)`` eigenpairs are candidates, and the k smallest candidates over all components
  are the PE columns (ties: lower component id first). An isolated node has no non-trivial
  eigenvector, so its PE row is zero. This makes "first k non-trivial" well defined on
  disconnected graphs (a whole-graph solver would return an arbitrary basis of the c-dimensional
  zero eigenspace) and keeps the sparse solver's work bounded by k per component.
- A component of at most ``dense_threshold`` nodes uses dense ``numpy.linalg.eigh``; a larger
  one uses ``scipy.sparse.linalg.eigsh`` (Lanczos, seeded start vector) for the *largest*
  eigenvalues of ``2 I - L``, which are L's smallest. Shift-invert was tried and rejected: the
  sparse LU of ``L - sigma I`` fills in catastrophically on expander-like graphs (a 30k-node
  SBM graph did not finish in a minute), while Lanczos on the large end of a PSD spectrum needs
  only matrix-vector products.
- Columns past the number of available non-trivial eigenvectors (e.g. ``N <= k``) are zero.
- Sign: each eigenvector is flipped so that its largest-magnitude entry (first such index) is
  positive. Eigenvectors are only defined up to sign (and up to rotation inside a repeated
  eigenvalue); the model's SignNet is invariant to the sign.

:class:`LaplacianPECache` memoises PEs by a fingerprint of the edge set (in memory and optionally
as ``.npy`` files in a directory), so a graph's PE is computed once per corpus build and, with a
directory, once per machine: :func:`resolve_pe_cache_dir` names the per-user folder that
``jaxfm pretrain`` uses by default (``$JAXFM_PE_CACHE``, else ``$XDG_CACHE_HOME/jaxfm/pe``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla

__all__ = [
    "LaplacianPECache",
    "graph_fingerprint",
    "laplacian_pe",
    "normalized_laplacian",
    "resolve_pe_cache_dir",
]

Method = Literal["auto", "dense", "eigsh"]
_VERSION = "lappe-v1"  # bump when the PE definition changes (invalidates on-disk caches)


def _adjacency(senders: np.ndarray, receivers: np.ndarray, num_nodes: int) -> sp.csr_matrix:
    s = np.asarray(senders, np.int64)
    r = np.asarray(receivers, np.int64)
    if s.shape != r.shape or s.ndim != 1:
        raise ValueError(
            f"laplacian_pe: senders {s.shape} and receivers {r.shape} must be equal 1-D shapes"
        )
    if s.size and (min(s.min(), r.min()) < 0 or max(s.max(), r.max()) >= num_nodes):
        raise ValueError(f"laplacian_pe: an edge index is outside [0, num_nodes={num_nodes})")
    keep = s != r
    s, r = s[keep], r[keep]
    a = sp.coo_matrix(
        (np.ones(2 * s.size), (np.concatenate([s, r]), np.concatenate([r, s]))),
        shape=(num_nodes, num_nodes),
    ).tocsr()
    a.data[:] = 1.0  # duplicates summed by tocsr -> binary
    return a


def normalized_laplacian(
    senders: np.ndarray, receivers: np.ndarray, num_nodes: int
) -> sp.csr_matrix:
    """``I - D^-1/2 A D^-1/2`` of the symmetrised 0/1 adjacency (isolated nodes: ``L_ii = 1``)."""
    return _laplacian(_adjacency(senders, receivers, num_nodes))


def _laplacian(a: sp.csr_matrix) -> sp.csr_matrix:
    deg = np.asarray(a.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(deg)
    inv_sqrt[deg > 0] = 1.0 / np.sqrt(deg[deg > 0])
    d = sp.diags(inv_sqrt)
    return (sp.identity(a.shape[0], format="csr") - d @ a @ d).tocsr()


def _fix_signs(vecs: np.ndarray) -> np.ndarray:
    """Flips each column so its first largest-magnitude entry is positive."""
    if vecs.size == 0:
        return vecs
    mag = np.abs(vecs)
    idx = np.argmax(mag >= mag.max(axis=0, keepdims=True) - 1e-6, axis=0)
    signs = np.sign(vecs[idx, np.arange(vecs.shape[1])])
    signs[signs == 0] = 1.0
    return vecs * signs


def _dense_pairs(lap: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    vals, vecs = np.linalg.eigh(lap.toarray())
    return vals[1 : k + 1], vecs[:, 1 : k + 1]


def _sparse_pairs(lap: sp.csr_matrix, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """k smallest non-trivial eigenpairs of a connected component's Laplacian by Lanczos.

    Runs ARPACK on ``M = 2 I - L`` (spectrum in ``[0, 2]``, PSD), whose largest eigenvalues are
    ``L``'s smallest; Lanczos converges fast on the large end of a PSD spectrum, and unlike
    shift-invert it needs no sparse LU (whose fill-in explodes on expander-like graphs).
    """
    n = lap.shape[0]
    v0 = np.random.default_rng([seed, n, 0x1A9]).uniform(0.5, 1.5, n)
    m = (2.0 * sp.identity(n, format="csr") - lap).tocsr()
    want = k + 1
    ncv = min(n, max(2 * want + 1, 24))
    vals, vecs = spla.eigsh(m, k=want, which="LA", v0=v0, ncv=ncv, tol=1e-9, maxiter=100 * n)
    vals = 2.0 - vals
    order = np.argsort(vals, kind="stable")
    vals, vecs = vals[order], vecs[:, order]
    return np.maximum(vals[1:], 0.0), vecs[:, 1:]


def laplacian_pe(
    senders: np.ndarray,
    receivers: np.ndarray,
    num_nodes: int,
    k: int,
    *,
    seed: int = 0,
    method: Method = "auto",
    dense_threshold: int = 2000,
    return_eigenvalues: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """First ``k`` non-trivial eigenvectors of the normalised Laplacian, one row per node.

    Args:
      senders, receivers: ``[E]`` edges (direction and duplicates ignored).
      num_nodes: N.
      k: PE dimension (>= 0).
      seed: seeds the sparse solver's start vector (results do not depend on it beyond solver
        tolerance, except for the basis chosen inside a repeated eigenvalue).
      method: ``"auto"`` (dense up to ``dense_threshold`` nodes per component, else sparse),
        ``"dense"`` or ``"eigsh"`` (forced for every component with more than ``k + 1`` nodes).
      dense_threshold: largest component solved densely under ``"auto"``.
      return_eigenvalues: also return the ``[k]`` eigenvalues (0-padded like the columns).

    Returns:
      ``float32 [N, k]`` PE (columns ordered by eigenvalue; zero columns past the available
      eigenvectors; zero rows for isolated nodes), and the eigenvalues if asked.

    Shapes:
      senders, receivers: ``[E]``; returns ``[N, k]`` (and ``[k]``).

    Example:
      >>> pe = laplacian_pe([0, 1, 2], [1, 2, 3], 4, 2)  # path 0-1-2-3
      >>> pe.shape
      (4, 2)
    """
    if k < 0:
        raise ValueError(f"laplacian_pe: k must be >= 0, got {k}")
    if num_nodes < 0:
        raise ValueError(f"laplacian_pe: num_nodes must be >= 0, got {num_nodes}")
    if method not in ("auto", "dense", "eigsh"):
        raise ValueError(f"laplacian_pe: method must be auto/dense/eigsh, got {method!r}")
    a = _adjacency(senders, receivers, num_nodes)
    pe = np.zeros((num_nodes, k), np.float64)
    eigenvalues = np.zeros(k, np.float64)
    if k == 0 or num_nodes < 2:
        out = pe.astype(np.float32)
        return (out, eigenvalues) if return_eigenvalues else out
    num_comp, comp = csgraph.connected_components(a, directed=False)
    members = np.argsort(comp, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(comp, minlength=num_comp))])
    cand_vals, cand_comp, cand_col = [], [], []
    cand_vecs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for c in range(num_comp):
        nodes = members[bounds[c] : bounds[c + 1]]
        n_c = nodes.size
        if n_c < 2:
            continue
        kc = min(k, n_c - 1)
        lap = _laplacian(a[nodes][:, nodes])
        dense = method == "dense" or (method == "auto" and n_c <= dense_threshold)
        if dense or n_c <= kc + 2:  # ARPACK needs k < n - 1
            vals, vecs = _dense_pairs(lap, kc)
        else:
            vals, vecs = _sparse_pairs(lap, kc, seed)
        vecs = _fix_signs(vecs)
        cand_vals.append(vals)
        cand_comp.append(np.full(vals.size, c))
        cand_col.append(np.arange(vals.size))
        cand_vecs[c] = (nodes, vecs)
    if cand_vals:
        vals = np.concatenate(cand_vals)
        comps = np.concatenate(cand_comp)
        cols = np.concatenate(cand_col)
        # Smallest eigenvalues first; near-equal values (solver noise) ordered by component.
        chosen = np.lexsort((cols, comps, np.round(vals, 8)))[:k]
        for j, idx in enumerate(chosen):
            nodes, vecs = cand_vecs[int(comps[idx])]
            pe[nodes, j] = vecs[:, cols[idx]]
            eigenvalues[j] = vals[idx]
    out = pe.astype(np.float32)
    return (out, eigenvalues) if return_eigenvalues else out


def graph_fingerprint(senders: np.ndarray, receivers: np.ndarray, num_nodes: int) -> str:
    """Hex digest of the undirected edge set (direction, order, duplicates, self-loops ignored)."""
    s = np.asarray(senders, np.int64)
    r = np.asarray(receivers, np.int64)
    keep = s != r
    lo, hi = np.minimum(s[keep], r[keep]), np.maximum(s[keep], r[keep])
    keys = np.unique(lo * max(int(num_nodes), 1) + hi)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{_VERSION}:{int(num_nodes)}:".encode())
    h.update(keys.astype("<i8").tobytes())
    return h.hexdigest()


_OFF = ("off", "0", "none", "false", "no")


def resolve_pe_cache_dir(
    setting: str | os.PathLike | None = "auto", env: Mapping[str, str] | None = None
) -> Path | None:
    """The folder of the on-disk PE cache that ``setting`` names; None = memory only.

    ``"auto"``: ``$JAXFM_PE_CACHE`` if set (``off``, ``0`` or ``none`` disables the cache), else
    ``$XDG_CACHE_HOME/jaxfm/pe`` (default ``~/.cache/jaxfm/pe``), like the compilation cache's
    folder (:mod:`jaxfm.compilation_cache`). ``None`` or ``"off"``: no disk cache. Anything else:
    that folder.

    >>> str(resolve_pe_cache_dir("auto", {"JAXFM_PE_CACHE": "/tmp/pe"}))
    '/tmp/pe'
    >>> resolve_pe_cache_dir("auto", {"JAXFM_PE_CACHE": "off"}) is None
    True
    >>> str(resolve_pe_cache_dir("auto", {"HOME": "/home/u"}))
    '/home/u/.cache/jaxfm/pe'
    >>> str(resolve_pe_cache_dir("/data/pe", {"JAXFM_PE_CACHE": "off"}))  # explicit wins
    '/data/pe'
    """
    if setting is None or str(setting).strip().lower() in _OFF:
        return None
    if str(setting) != "auto":
        return Path(setting).expanduser()
    env = os.environ if env is None else env
    own = env.get("JAXFM_PE_CACHE", "").strip()
    if own:
        return None if own.lower() in _OFF else Path(own).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")) / ".cache")
    return Path(base).expanduser() / "jaxfm" / "pe"


def _create_temp(directory: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """Creates a new file in ``directory`` with the mode the umask gives (as ``open`` would).

    ``tempfile.mkstemp`` makes its files 0600 whatever the umask, so a cache shared by a group
    (on NFS, say) would be unreadable to the others; here the kernel applies the umask to 0666.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        path = directory / f"{prefix}{os.getpid()}.{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary file name in {directory}")


class LaplacianPECache:
    """Memoises :func:`laplacian_pe` by graph fingerprint, in memory and optionally on disk.

    The key is ``(fingerprint, k, seed, method, dense_threshold)``: every argument of
    :func:`laplacian_pe` (the fingerprint covers N, the undirected edge set and the PE definition's
    version, ``_VERSION``), so an entry is only ever read for the PE it would recompute. With
    ``cache_dir`` each PE is also written as ``<key>.npy`` (atomically: temp file + rename; the
    file's mode honours the umask, like any file the user writes); a file that does not load as a
    finite ``float32 [N, k]`` array is ignored and recomputed. A folder that cannot be written
    (read-only, full) only costs the new disk copies: one warning, and the PEs stay in memory; a
    cache never stops a run.

    Attributes:
      hits, misses: counters (a disk hit counts as a hit).
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._writable = True
        self._memory: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memory)

    def get(
        self,
        senders: np.ndarray,
        receivers: np.ndarray,
        num_nodes: int,
        k: int,
        *,
        seed: int = 0,
        method: Method = "auto",
        dense_threshold: int = 2000,
    ) -> np.ndarray:
        """The PE of the graph (``float32 [N, k]``, read-only), computed on the first request."""
        fp = graph_fingerprint(senders, receivers, num_nodes)
        key = f"{fp}-k{k}-s{seed}-{method}-d{dense_threshold}"
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        pe = self._load(key, (num_nodes, k))
        if pe is not None:
            self.hits += 1
        else:
            self.misses += 1
            pe = laplacian_pe(
                senders,
                receivers,
                num_nodes,
                k,
                seed=seed,
                method=method,
                dense_threshold=dense_threshold,
            )
            self._save(key, pe)
        pe.setflags(write=False)
        self._memory[key] = pe
        return pe

    def _load(self, key: str, shape: tuple[int, int]) -> np.ndarray | None:
        if self.cache_dir is None:
            return None
        try:
            pe = np.load(self.cache_dir / f"{key}.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError):  # absent, unreadable or not an array file
            return None
        if pe.shape != shape or pe.dtype != np.float32 or not np.isfinite(pe).all():
            return None
        return pe

    def _save(self, key: str, pe: np.ndarray) -> None:
        if self.cache_dir is None or not self._writable:
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = _create_temp(self.cache_dir, f".{key}.", ".npy.tmp")
        except OSError as err:
            self._unwritable(err)
            return
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, pe, allow_pickle=False)
            os.replace(tmp, self.cache_dir / f"{key}.npy")
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            self._unwritable(err)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _unwritable(self, err: OSError) -> None:
        warnings.warn(
            f"Laplacian PE cache {self.cache_dir} cannot be written ({err}); new PEs are kept "
            "in memory only (set $JAXFM_PE_CACHE or --pe-cache-dir to another folder, or off)",
            RuntimeWarning,
            stacklevel=3,
        )
        self._writable = False  # one warning, not one per graph; reads go on
