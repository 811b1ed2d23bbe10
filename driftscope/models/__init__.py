"""Models: the ``MODELS`` registry and the head/body layout (``registry.py``), the architectures
(``nets.py``, ``nets_1d.py``), the torch-free layout records (``layout.py``) and module buffers as
federated state (``buffers.py``)."""
