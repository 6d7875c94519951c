"""hepdeploy.backend: loading and running models, below every stage.

- :mod:`~hepdeploy.backend.base`: the :class:`Runner` base class (template ``run``, metadata, ``close``).
- :mod:`~hepdeploy.backend.loaders`: loading source models safely (torch, TorchScript, ExportedProgram,
  Keras, SavedModel).
- :mod:`~hepdeploy.backend.onnxrt`: ONNX Runtime; the one module that creates inference sessions.
- :mod:`~hepdeploy.backend.pytorch`, :mod:`~hepdeploy.backend.tf`, :mod:`~hepdeploy.backend.trt`,
  :mod:`~hepdeploy.backend.triton`: runners over PyTorch, Keras/TensorFlow, TensorRT engines and a live
  Triton server.
- :mod:`~hepdeploy.backend.sources`: which loader and runner open a spec's source or an artifact file.

convert, optimize, validate and triton all run models through here; none of them imports another.
"""
