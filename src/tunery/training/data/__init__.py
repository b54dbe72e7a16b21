"""Pure data path: render records to tokens, pack them into rows, collate rows into tensors."""
