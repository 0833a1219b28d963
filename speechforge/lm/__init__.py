"""Language models: a decoder-only Transformer trained on text, for generation, shallow
fusion in beam search, and initialising the ASR decoder.

Importing the package registers its components (the registry imports it as a
built-in module): the ``transformer_lm`` model, the ``hw4p1_text`` and ``text_lines``
datasets, the ``lm_ce`` loss, the ``lm`` trainer, the ``sample`` generator, the
``transformer_lm`` LM scorer and the ``lm_run`` tokenizer.
"""

from speechforge.lm import data, generate, model, scorer, train, transfer  # noqa: F401  (registration)
