"""Data: files or the teacher itself -> token examples -> batches.

`files.read_records` reads local files and hub datasets into dict records; `render` turns records into
fixed-length examples (input ids, next-token targets, loss mask); `generate` makes data with the teacher
when there is none; `batches` splits off a held-out set and yields resumable batches; `packing` puts
instruction records several per training row, each read as if alone (data.pack).
"""
