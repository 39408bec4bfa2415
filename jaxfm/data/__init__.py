"""Datasets for jaxfm: graph-format readers and the dataset registry (GraphFM; the corpus, packing
and grain pipeline live in ``jaxfm.data.corpus`` / ``packing`` / ``pipeline``), file readers
(AnnData ``.h5ad``, loom, BrainLM atlas), FIMP spatial
transcriptomics preprocessing (normalisation, gene-token sampling, value masking, splits) and
built-in synthetic data for demos and tests.
"""

from jaxfm.data.anndata import (
    AnnDataLike,
    FileFormatError,
    MissingKeyError,
    detect_format,
    read_anndata_like,
    read_h5ad,
    read_loom,
)
from jaxfm.data.fmri import A424_NUM_REGIONS, FMRIDataset, fmri_patches, read_a424_coordinates
from jaxfm.data.gene_tokens import map_gene_symbols, mask_values, sample_expressed_genes
from jaxfm.data.graph_dataset import GraphClassificationDataset, NodeDataset, SmallGraph, Split
from jaxfm.data.graph_validate import DatasetFormatError
from jaxfm.data.labels import UNLABELLED, class_labels
from jaxfm.data.registry import DatasetRef, find_datasets, load_dataset
from jaxfm.data.registry import detect_format as detect_graph_format
from jaxfm.data.spatial import SpatialDataset, load_spatial, normalize_total_log1p, to_graph_arrays
from jaxfm.data.splits import split_nodes
from jaxfm.data.synthetic import (
    GeoImageDataset,
    synthetic_fmri,
    synthetic_images,
    synthetic_spatial,
)

__all__ = [
    "A424_NUM_REGIONS",
    "UNLABELLED",
    "AnnDataLike",
    "DatasetFormatError",
    "DatasetRef",
    "FMRIDataset",
    "FileFormatError",
    "GeoImageDataset",
    "GraphClassificationDataset",
    "MissingKeyError",
    "NodeDataset",
    "SmallGraph",
    "SpatialDataset",
    "Split",
    "class_labels",
    "detect_format",
    "detect_graph_format",
    "find_datasets",
    "fmri_patches",
    "load_dataset",
    "load_spatial",
    "map_gene_symbols",
    "mask_values",
    "normalize_total_log1p",
    "read_a424_coordinates",
    "read_anndata_like",
    "read_h5ad",
    "read_loom",
    "sample_expressed_genes",
    "split_nodes",
    "synthetic_fmri",
    "synthetic_images",
    "synthetic_spatial",
    "to_graph_arrays",
]
