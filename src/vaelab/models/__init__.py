"""Models: the distributions, the likelihoods p(x|z), the priors p(z), the nets, and the VAE
itself (flat or hierarchical), each part returning a ``torch.distributions`` object.

May import: base.
"""
