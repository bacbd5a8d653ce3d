-- the MLflow tracking server's backend store lives beside rag-loop's database
CREATE DATABASE mlflow OWNER rag;
