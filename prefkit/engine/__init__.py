"""The streaming merge engine. `executor` runs a Plan tensor by tensor and writes the output folder;
`slabs` reads a tensor group into reused buffers (in slabs of rows for elementwise methods),
overlapping the next read with the current merge; `threads` spreads an elementwise merge's chunks
over the cores; `tensorlike` holds helpers that take a torch tensor or a numpy array alike;
`memory` gives the heap's freed pages back to the OS. Host arrays (numpy views of checkpoint bytes)
are `prefkit.io.arrays`, since reading produces them."""
