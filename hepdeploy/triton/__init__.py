"""hepdeploy.triton: Triton Inference Server model repositories.

* ``config``: ModelConfig messages built from tensor specs and the spec's ``triton:`` block,
  written and read as config.pbtxt through protobuf's text format.
* ``plan``: what one publish writes (a model, its twins, its preprocessing and ensemble), planned and
  checked before anything is written; the only place twins are named.
* ``repository``: versioned, atomic publishing of a plan (``publish``; ``publish_model`` for one model).
* ``layout``: file names and the typed manifest (role, ``twin_of``, sha256, verdict, provenance).
* ``check``: ``check_repository`` (what ``hepdeploy triton check`` runs).
* ``server`` / ``python_backend``: a local server and Python-backend twins (serve stage).

Nothing heavy is imported here; import the submodule you need.
"""
