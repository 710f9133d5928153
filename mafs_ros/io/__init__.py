"""Image files and datasets on disk, without torch: which files pair up, and reading them as numpy arrays.

    files     image suffixes, a folder's images by stem, `mafs fuse`-style pairing of two files or folders
    images    visible, thermal, RGBT, label and fused image files as numpy arrays
    layouts   dataset folder layouts (msrs, mfnet, fmb, pst900, pairs) as `PairFiles`
    samples   the bundled sample pairs (data/sample), resized, for checks and benchmarks
"""
