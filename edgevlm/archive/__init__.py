"""Captioning a video archive: many files, one output each, a manifest, resume; in this process, in worker
processes (`--jobs`), or on a Ray cluster (`--ray`). `edgevlm.archive.run.caption_archive` is the entry point."""
