"""ML only: tensors in, tensors out; nothing here touches the catalog or its files."""
