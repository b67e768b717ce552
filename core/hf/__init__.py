"""Hugging Face model helpers shared by the pipeline, the trainer and the tests (tiny models
built from configs)."""
