"""Text generation with the native model (`tst sample`): no transformers needed."""
