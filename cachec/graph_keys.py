"""Names of the metadata cachec attaches to FX nodes and graph modules, shared by passes and core."""

# node.meta flag: the node depends on no stream input (set by HoistConditioning)
COND_KEY = "cachec_cond"
# node.meta: name of the segment a node belongs to (set by AssignSegments)
SEGMENT_KEY = "cachec_segment"
# graph_module.meta: names of the values a segment returns, parallel to its output tuple
OUTPUTS_KEY = "cachec_output_names"
