"""The code MLflow logs for a gendet model ("models from code"): it only names the model class.

MLflow runs this file when the model is loaded (``mlflow.pyfunc.load_model``, ``mlflow models
serve``); ``GendetModel.load_context`` then reads the Detector artifact. Nothing is pickled.
"""

import mlflow

from gendet.serve.pyfunc import GendetModel

mlflow.models.set_model(GendetModel())
