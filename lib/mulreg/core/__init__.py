"""The science's parts: CIFAR-10 tasks, the paper's CNNs, the penalties, metrics, epoch rules and
devices. Imports only from `mulreg` itself (config, protocols, provenance, progress).
"""
