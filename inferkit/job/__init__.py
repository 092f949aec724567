"""The job itself (`inferkit run`): the only package that imports ray, torch and transformers."""
