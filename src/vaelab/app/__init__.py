"""The faces: the command line (:mod:`.cli`), the live explorer (:mod:`.serve` answers HTTP,
:mod:`.explore` computes), the figures (:mod:`.plots`, the only drawing) and the pages.

May import: base, data, models, runs, training, studies, coding.
"""
