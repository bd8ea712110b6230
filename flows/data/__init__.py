"""The data wing: a product line's images as DVC-versioned data (store), how they arrive and are
checked (layout, validation, roles by a stable hash), the data-add transaction (adding), the demo
lines (demo), and the filesystem steps they share (folders). It never imports the model or
registry wings."""
