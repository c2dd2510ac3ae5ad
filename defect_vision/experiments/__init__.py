"""Experiments over several stages: leave-one-defect-out open-vocabulary detection (`defect-vision openvocab`) and
the few-shot learning curve (`defect-vision curve`). Each derives training sets from a converted category
(subsets.py), trains with the stages' own functions and measures with the evaluation's."""
