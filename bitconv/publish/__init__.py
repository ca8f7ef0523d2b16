"""Publishing an artifact: the model card (`card`) and the upload to the Hugging Face Hub (`upload`)."""
