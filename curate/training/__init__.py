"""Training the small shapes-world models that curate ships (``models/``).

- :mod:`curate.training.clip`: the CLIP caption scorer (``python -m curate.training.clip``)
- :mod:`curate.training.captioner`: the BLIP captioner (``python -m curate.training.captioner``)
- :mod:`curate.training.loop`: the skeleton both share (settings, schedule, loop, command line)
- :mod:`curate.training.data`: shapes-world scenes rendered as the sampler reads them
- :mod:`curate.training.evaluate`: held-out accuracy, AUROC, the recommended threshold
- :mod:`curate.training.cards`: the model cards (templates in ``cards/``)
- :mod:`curate.training.tokenizer`: the tokenizers, trained offline
"""
