"""SGLang plugin entry point (group ``sglang.srt.plugins``, name ``deft``).

SGLang's ``load_plugins()`` runs :func:`register` in the ``launch_server`` parent before argument
parsing, in ``Engine.__init__`` and first thing in every scheduler process. It registers the
``deft`` attention backend (so ``--attention-backend deft`` parses and builds) and installs the
other patches, which stay inert unless DeFT is selected or ``DEFT_ENABLE=1`` is inherited from a
parent that called :func:`deft_sglang.enable`.
"""
from __future__ import annotations


def register() -> None:
    """Apply the DeFT patches for this process (idempotent).

    Raises
    ------
    deft_sglang.patches.SGLangCompatError
        Unsupported SGLang version or a moved symbol (SGLang logs it and carries on without DeFT).
    """
    import deft_sglang
    from deft_sglang import patches
    from deft_sglang.config import get_config

    patches.apply_all(owner="plugin")
    if get_config().enable:
        deft_sglang._mark_enabled()
