"""widedeep: how ResNet representations change with width and depth (Nguyen, Raghu & Kornblith, 2021).

The Python API for notebooks (README, "Python API"):
    analysis.cka.cka, analysis.cka.gram, analysis.cka.MinibatchCKA   the CKA estimator
    analysis.registry.load_model                                     a registered model, hooks working
    analysis.features.tapped                                         layer outputs by name
    analysis.blocks.find_blocks                                      the block detector
Layers, bottom up: data, nets, device -> science, training, store -> stages -> entrypoints/.
"""
