"""The objective's fast paths: the student's (tokens x vocab) logits one chunk at a time, never whole.

Files: chunked (`fused_linear_loss`: the output layer and a chunk loss fused, gradients taken per chunk;
what the loss is stays with the caller), closed_form (the default objective's chunk gradient written out,
no autograd graph), native (closed_form's chunk as one compiled C kernel, native_kernel.c, on CPU).
`objective.Objective` picks the path; every path gives the same loss and gradients as the plain one
(tests/losses/fused/).
"""
