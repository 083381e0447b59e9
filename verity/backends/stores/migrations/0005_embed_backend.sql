-- What made a collection's vectors besides the model and dimension: the embedder backend
-- (torch: sentence-transformers; onnx: ONNX Runtime) and its precision (float32, bfloat16 or
-- int8). Collections made before this was recorded were made with sentence-transformers in
-- float32 or bfloat16, whose vectors agree to a cosine distance of about 1e-5: both count as
-- float32 here.
ALTER TABLE collections
    ADD COLUMN embed_backend text NOT NULL DEFAULT 'torch',
    ADD COLUMN embed_precision text NOT NULL DEFAULT 'float32';
