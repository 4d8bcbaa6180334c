"""A trained model at work: the Predictor over its backends (torch, ONNX Runtime, OpenVINO, INT8) and their
cached exports, dynamic batching, the HTTP server and its guards, and the DICOM results (SR, Secondary Capture).
"""

from pneumocam.exports import lazy_exports

_HOMES = {  # public name -> the module of this package that holds it
    "Runner": "backends", "export_onnx": "backends", "make_runner": "backends", "onnx_runner": "backends",
    "onnxruntime_session": "backends", "openvino_model": "backends", "resolve_backend": "backends",
    "torch_runner": "backends",
    "DynamicBatcher": "batching",
    "DISCLAIMER": "dicom_results", "MANUFACTURER": "dicom_results", "ModelIdentity": "dicom_results",
    "NO_UNITS": "dicom_results", "PANEL_SIDE": "dicom_results", "PLAIN_CHEST_XRAY": "dicom_results",
    "PNEUMONIA": "dicom_results", "SC_SERIES": "dicom_results", "SR_SERIES": "dicom_results",
    "TYPE2_PATIENT_STUDY": "dicom_results", "display_orientation": "dicom_results",
    "patient_study_source": "dicom_results", "reported_probability": "dicom_results",
    "result_objects": "dicom_results", "result_panel": "dicom_results", "result_uid": "dicom_results",
    "save_dicom": "dicom_results", "secondary_capture": "dicom_results", "structured_report": "dicom_results",
    "write_results": "dicom_results",
    "BodyLimit": "http_guards", "LoopbackHostOnly": "http_guards", "host_name": "http_guards",
    "is_loopback": "http_guards", "resolve_token": "http_guards", "send_error": "http_guards",
    "ARRAY": "onnx_cache", "CACHE_FORMAT": "onnx_cache", "CachedModel": "onnx_cache", "cache_folder": "onnx_cache",
    "cache_key": "onnx_cache", "load_cached": "onnx_cache", "save_cached": "onnx_cache",
    "Compiled": "predictor", "ForwardPass": "predictor", "GRADIENT_METHODS": "predictor", "LoadedImage": "predictor",
    "METHODS": "predictor", "Prediction": "predictor", "Predictor": "predictor", "batches": "predictor",
    "load_network": "predictor", "resolve_device": "predictor",
    "CACHE_ENV": "quantize", "FLOAT_OPS": "quantize", "INT8_BACKENDS": "quantize", "cache_dir": "quantize",
    "cached_int8_model": "quantize", "description_path": "quantize", "int8_path": "quantize",
    "quantize_onnx": "quantize", "read_description": "quantize", "weights_fingerprint": "quantize",
    "API_VERSION": "server", "ERRORS": "server", "MAGIC": "server", "MULTIPART_OVERHEAD": "server",
    "PICTURES": "server", "PICTURES_PARAMETER": "server", "PREDICT_OPENAPI": "server", "STATIC": "server",
    "UploadError": "server", "UploadReader": "server", "answer": "server", "answer_off_the_loop": "server",
    "create_app": "server", "decode_upload": "server", "model_description": "server", "png_base64": "server",
    "requested_options": "server", "requested_pictures": "server", "requested_view": "server", "serve": "server",
    "sniff_suffix": "server", "upload_limit_bytes": "server", "VIEW_PARAMETER": "server",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
