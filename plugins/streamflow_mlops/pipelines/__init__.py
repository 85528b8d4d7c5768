"""What DAG tasks call: one function per task, composing the layers below with explicit arguments."""
