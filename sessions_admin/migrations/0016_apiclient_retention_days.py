import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('sessions_admin', '0015_coze_api'),
    ]

    operations = [
        migrations.AddField(
            model_name='apiclient',
            name='retention_days',
            field=models.PositiveIntegerField(blank=True, help_text="Days this client's messages are kept (each by its own age); empty = CHAT_RETENTION_DAYS.", null=True, validators=[django.core.validators.MinValueValidator(1)]),
        ),
    ]
