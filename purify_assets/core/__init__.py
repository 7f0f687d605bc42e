"""Pure purification logic. Nothing in this package imports Dagster.

Modules, in the order data flows through them:

- ``ingest``      parse landed files (JSONL, JSON array, CSV/TSV, Parquet, compressed) into records
- ``fields``      map source columns onto instruction / input / output
- ``clean``       normalize text, filter rows by heuristics, record reason codes
- ``pii``         find and redact personal data with typed placeholders
- ``embedders``   turn text into L2-normalized float32 vectors (Sentence-Transformers, ONNX, USE, OpenAI)
- ``dedup``       exact, near (MinHash LSH), semantic and conflict duplicate sets
- ``clustering``  K-means / DBSCAN / HDBSCAN with optional reduction first
- ``projection``  PCA / t-SNE / UMAP to 2-D and 3-D
- ``metrics``     silhouette, Davies-Bouldin, Calinski-Harabasz, balance, per-cluster figures
- ``plots``       scatter PNGs and interactive 3-D HTML
- ``review``      the review schema, the offline reviewer and the OpenAI reviewer
- ``params``      versioned parameters outside the warehouse (SQLite), diffs, affected assets
- ``demo``        the generated demo dataset
"""
