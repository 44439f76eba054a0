"""The image application built on the funclora core: pretrained backbones, image loading, the
drawn-goldfish experiment, evaluation, reports and the `funclora` command line.

The core (`funclora`) never imports this package; this package imports torchvision and PIL.
"""
