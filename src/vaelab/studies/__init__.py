"""Studies of a trained model: evaluation and the importance-sampled likelihood, Bayes rule on
a grid, imagination, the maximum-likelihood baselines, the classifiers; numbers, no drawing.

May import: base, data, models, runs, training.
"""
