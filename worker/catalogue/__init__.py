"""The Tencent job-query APIs jobtracker knows, as data (``table``): where each answer's status
is, what each raw value means, which error codes mean what. A leaf below the settings, which
read one endpoint and one rate per kind of it."""
