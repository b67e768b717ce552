"""pkd: knowledge distillation of vision-language models for VQA (PKD and DistillVLM)."""

__version__ = "0.1.0"
