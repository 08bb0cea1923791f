"""Substitute: replace each matched attention by one `attnrewrite` node whose model-local
function body (standard ONNX ops only) computes the chosen method."""
