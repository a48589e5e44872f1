"""Preparing the inputs: the scan read and cleaned, the landmarks matched to the model's."""
