"""The model lab, off the serving path: simulation, training, reference models, faults, the demo."""
