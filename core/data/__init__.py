"""pkd.data (core/data/): VQA formats, answers, metric, images, the synthetic benchmark."""
