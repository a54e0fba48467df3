"""Running trained models: a run's fold models as one module (:mod:`~soundtag.inference.fold_models`),
chunks to clip probabilities (:mod:`~soundtag.inference.clips`), and how chunks and folds are
combined (:mod:`~soundtag.inference.combine`, NumPy only). Training's out-of-fold predictions,
``predict``, ``evaluate --tta``, ``tag``, ``embed`` and ``export`` all run models through here.

Nothing is imported here, so that the ONNX engine can use the NumPy part without PyTorch.
"""
