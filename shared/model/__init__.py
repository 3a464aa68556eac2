"""The model layer (torch, diffusers; imports ``protocol`` and ``wire``): the pipeline loader
(:mod:`.loader`), the ops a stage calls (:mod:`.ops`), the DDIM loop and its job (:mod:`.denoise`), seed
codecs (:mod:`.codec`), VAE helpers (:mod:`.vae`), images and PSNR (:mod:`.images`), meg-tiny's config
(:mod:`.meg_tiny`), random pipelines for tests and benchmarks (:mod:`.random_pipeline`)."""
