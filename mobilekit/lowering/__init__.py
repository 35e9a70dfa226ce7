"""Export-time forms of the decoder, shared by the targets (which lower them) and the
Python runtimes that run the same modules eagerly. Imports torch; never imports targets/ or runtime/."""
