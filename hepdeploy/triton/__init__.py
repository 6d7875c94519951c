"""hepdeploy.triton: Triton Inference Server model repositories.

* ``config``: ModelConfig messages built from tensor specs and the spec's ``triton:`` block,
  written and read as config.pbtxt through protobuf's text format.
* ``repository``: versioned, atomic publishing (``publish_model``, ``publish_twins``).
* ``check``: ``check_repository`` (what ``hepdeploy triton check`` runs).
* ``server`` / ``python_backend``: a local server and Python-backend twins (serve stage).

Nothing heavy is imported here; import the submodule you need.
"""
