"""Staged SPEX training (stage 0 MVPNet, stage 1 text, stage 2 text + mask) and its
evaluation against the spectral-index baseline. Pure library code: the Prefect flows in
``flows/`` and the ``spex train`` / ``spex eval`` commands are thin wrappers over it."""
